import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import Actor
from controlplane.services import create_superuser


class Command(BaseCommand):
    help = (
        "Make sure an administrator exists. Uses DJANGO_SUPERUSER_USERNAME / _PASSWORD / _EMAIL when set; "
        "otherwise creates 'admin' with a random password and prints it once."
    )

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        if username:
            if not User.objects.filter(username=username).exists():
                if not password:
                    # Django would create the user with no usable password: an administrator who can never log in.
                    raise CommandError(
                        f"DJANGO_SUPERUSER_USERNAME={username} is set but DJANGO_SUPERUSER_PASSWORD is not: set it "
                        "too, or unset both to have 'admin' created with a random password."
                    )
                email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
                create_superuser(username, email, password, actor=Actor.system())
                self.stdout.write(f"Created administrator {username!r} from DJANGO_SUPERUSER_* variables.")
            return
        if User.objects.filter(is_superuser=True).exists():
            return
        if password:
            raise CommandError(
                "DJANGO_SUPERUSER_PASSWORD is set but DJANGO_SUPERUSER_USERNAME is not: set the username too, or "
                "unset both to have 'admin' created with a random password."
            )
        password = secrets.token_urlsafe(12)
        create_superuser("admin", "", password, actor=Actor.system())
        self.stdout.write(
            self.style.SUCCESS(f"Created administrator 'admin' with password: {password}")
            + "\n(shown once; change it at /account/password/, or by clicking your name in the top bar)"
        )
