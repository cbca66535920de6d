"""`make run` calls this: a `dev` environment on the local target when there is none at all."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from controlplane.audit import Actor
from deployments import services
from deployments.models import Environment, TargetKind


class Command(BaseCommand):
    help = "Create a 'dev' environment on the local target when no environment exists."

    def handle(self, *args, **options):
        if Environment.objects.exists():
            return
        services.create_environment(
            "dev",
            actor=Actor.system(),
            target=TargetKind.LOCAL,
            description="Runtime processes on this machine (created by make run).",
        )
        self.stdout.write("Created the 'dev' environment (local processes on this machine).")
