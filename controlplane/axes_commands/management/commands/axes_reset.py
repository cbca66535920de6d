from controlplane.axes_commands.management.commands._lift import LiftCommand


class Command(LiftCommand):
    help = "Lift every log-in lockout (forget all failed log-ins), recorded in the audit log."

    def handle(self, *args, **options):
        self.lift_all([(None, None)], [])
