from django.core.management.base import BaseCommand, CommandError

from controlplane.audit import Anchor, check_chain


class Command(BaseCommand):
    help = (
        "Recompute the audit log's hash chain; exit non-zero at the first broken row, or when an "
        "anchor recorded earlier (--anchor ID:HASH) is gone or changed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--anchor",
            metavar="ID:HASH",
            help="An event's id and hash written down earlier (the 'head' this command prints): "
            "fails if that event was deleted or rewritten since, which the chain alone cannot show "
            "for events cut from its end.",
        )

    def handle(self, *args, **options):
        try:
            anchor = Anchor.parse(options["anchor"]) if options["anchor"] else None
        except ValueError as error:
            raise CommandError(str(error)) from None
        report = check_chain(anchor=anchor)
        broken = report.broken
        if broken is not None:
            raise CommandError(
                f"audit chain broken at row {broken.id} ({broken.occurred_at:%Y-%m-%d %H:%M:%S} {broken.action}): "
                "its content or its link to the row before it was changed, or a row before it was deleted."
            )
        if report.anchor_problem:
            raise CommandError(f"audit chain links up, but {report.anchor_problem}")
        self.stdout.write(f"audit chain intact: {report.checked} events verified")
        if report.head is not None:
            self.stdout.write(
                f"head: {report.head}\n"
                "Keep that line outside this database (a ticket, a log, another system); "
                "'verify_audit --anchor' with it later fails if the log was cut back or rewritten before it."
            )
