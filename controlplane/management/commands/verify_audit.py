from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import verify_chain
from controlplane.models import AuditEvent


class Command(BaseCommand):
    help = "Recompute the audit log's hash chain; exit non-zero at the first broken row."

    def handle(self, *args, **options):
        broken = verify_chain()
        if broken is not None:
            raise CommandError(
                f"audit chain broken at row {broken.id} ({broken.occurred_at:%Y-%m-%d %H:%M:%S} {broken.action}): "
                "its content or its link to the row before it was changed, or a row before it was deleted."
            )
        self.stdout.write(f"audit chain intact: {AuditEvent.objects.count()} events verified")
