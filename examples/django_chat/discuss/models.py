from django.conf import settings
from django.db import models


class Message(models.Model):
    room = models.SlugField(max_length=50)
    user = models.ForeignKey(settings.AUTH_USER_MODEL,
                             on_delete=models.CASCADE)
    text = models.CharField(max_length=2000)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]

    def as_data(self):
        """What the pages receive in msg.data."""
        return {"id": self.pk, "name": self.user.get_username(),
                "text": self.text, "room": self.room}
