"""`make clean` calls this before it deletes var/: the local target's processes would outlive it.

Every runtime process and router of the local target under VAR_DIR is stopped and its state
folder removed (LocalTarget.teardown), as a restart of the machine would. The database is
not changed: at its next pass the sweeper finds nothing running and writes that into the
newest rollout's status, so the deployment shows `stopped`, without an endpoint, until it
is deployed or rolled back again (nothing starts it on its own).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from deployments.targets.base import DeploymentRef
from deployments.targets.local import LocalTarget


class Command(BaseCommand):
    help = "Stop every local deployment's runtime processes and router on this machine (the folders under VAR_DIR)."

    def handle(self, *args, **options):
        root = Path(settings.VAR_DIR) / "deployments"
        keys = sorted(path.name for path in root.glob("*") if path.is_dir())
        target = LocalTarget()
        for key in keys:
            target.teardown(DeploymentRef(id=0, key=key, model_name="", environment=""))
        if keys:
            self.stdout.write(f"Stopped the local deployments {', '.join(keys)}.")
