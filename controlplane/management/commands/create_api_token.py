from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import Actor
from controlplane.errors import ServiceError
from controlplane.models import TokenScope
from controlplane.tokens import create_token


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (last line). Only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A name to recognise the token by (default: cli).")
        parser.add_argument(
            "--scope",
            choices=TokenScope.values,
            default=TokenScope.ADMIN,
            help="read: look only; deploy: also upload and deploy; admin (default): everything the user may do.",
        )
        parser.add_argument(
            "--environment",
            action="append",
            default=[],
            dest="environments",
            help="Limit the token to this environment (repeat for several; default: all of the user's).",
        )
        parser.add_argument("--expires-in-days", type=int, default=None, help="Default: until revoked.")

    def handle(self, *args, username, name, scope, environments, expires_in_days, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}. Create one with 'python manage.py createsuperuser'.")
        try:
            issued = create_token(
                user,
                name,
                actor=Actor.system(),
                scope=scope,
                environments=environments,
                expires_in_days=expires_in_days,
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"Created token {name!r} for {username}. It is shown once:")
        self.stdout.write(issued.raw)
