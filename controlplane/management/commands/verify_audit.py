from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import check_chain


class Command(BaseCommand):
    help = "Recompute the audit log's hash chain; exit non-zero at the first broken row."

    def handle(self, *args, **options):
        report = check_chain()
        broken = report.broken
        if broken is not None:
            raise CommandError(
                f"audit chain broken at row {broken.id} ({broken.occurred_at:%Y-%m-%d %H:%M:%S} {broken.action}): "
                "its content or its link to the row before it was changed, or a row before it was deleted."
            )
        self.stdout.write(f"audit chain intact: {report.checked} events verified")
