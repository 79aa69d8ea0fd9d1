from django.contrib.auth import views as auth_views
from django.urls import path

from discuss import views

urlpatterns = [
    path("", views.index, name="index"),
    path("rooms/<slug:room>/", views.room, name="room"),
    path("rooms/<slug:room>/post", views.post, name="post"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
