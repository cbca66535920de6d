"""What the audited axes_reset* commands share."""

from __future__ import annotations

import getpass
import os
import shlex

from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import Actor, record_refusal
from controlplane.errors import ServiceError
from controlplane.services import lift_login_lockouts


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no LOGNAME/USER (a container's arbitrary uid)
        return f"uid {os.getuid()}"


class LiftCommand(BaseCommand):
    """Calls `lift` once per (username, ip_address) pair and prints what django-axes' command prints."""

    def lift_all(self, pairs: list[tuple[str | None, str | None]], arguments: list[str]) -> None:
        how = f"python manage.py {shlex.join([self.command_name(), *arguments])}"[:300]
        how = f"{how}, run by OS user {os_user()}"
        actor = Actor.system()
        removed, lifted = 0, []
        for username, ip_address in pairs:
            try:
                result = lift_login_lockouts(actor=actor, username=username, ip_address=ip_address, how=how)
            except ServiceError as exc:
                record_refusal("login.lockout_reset", actor=actor, outcome=exc.outcome, message=f"{how}: {exc.message}")
                raise CommandError(exc.message) from exc
            removed += result.attempts_removed
            lifted += result.lifted
        # django-axes' own wording first: scripts may read it.
        self.stdout.write(f"{removed} attempts removed." if removed else "No attempts found.")
        if lifted:
            self.stdout.write(f"Lockouts lifted: {', '.join(lifted)}.")
        self.stdout.write("Recorded in the audit log as login.lockout_reset.")

    def command_name(self) -> str:
        return self.__module__.rsplit(".", 1)[-1]
