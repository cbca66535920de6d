from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import Actor
from controlplane.errors import ServiceError
from controlplane.tokens import create_token


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (last line). Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A name to recognise the token by (default: cli).")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}. Create one with 'python manage.py createsuperuser'.")
        try:
            issued = create_token(user, name, actor=Actor.system())
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Created token {name!r} for {username}. It is shown once:")
        self.stdout.write(issued.raw)
