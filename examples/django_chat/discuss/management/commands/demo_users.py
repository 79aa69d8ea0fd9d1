from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

PASSWORD = "bagou-demo"


class Command(BaseCommand):
    help = "Creates the demo users alice and bob (password %s)." % PASSWORD

    def handle(self, *args, **options):
        User = get_user_model()
        for name in ("alice", "bob"):
            if not User.objects.filter(username=name).exists():
                User.objects.create_user(name, password=PASSWORD)
                self.stdout.write("user %s, password %s" % (name, PASSWORD))
