from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from . import chat
from .models import Message

ROOMS = ["lobby", "random"]


@login_required
def index(request):
    return redirect("room", room=ROOMS[0])


@login_required
def room(request, room):
    if room not in ROOMS:
        raise Http404("no such room")
    # The session must exist for the page to authenticate its socket.
    if request.session.session_key is None:
        request.session.save()
    return render(request, "discuss/room.html", {
        "room": room, "rooms": ROOMS,
        "channel": chat.room_channel(room),
        "private_channel": chat.private_channel(request.user),
        "history": Message.objects.filter(room=room).select_related(
            "user").order_by("-created", "-id")[:50][::-1],
    })


@login_required
@require_POST
def post(request, room):
    """Saves a message posted with the form, then broadcasts it."""
    text = request.POST.get("text", "").strip()
    if room not in ROOMS:
        raise Http404("no such room")
    if not text or len(text) > chat.MAX_TEXT:
        return JsonResponse({"error": "text must be 1-%d characters"
                             % chat.MAX_TEXT}, status=400)
    msg = chat.post(request.user, room, text)
    return JsonResponse({"id": msg.pk})
