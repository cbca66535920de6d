from controlplane.axes_commands.management.commands._lift import LiftCommand


class Command(LiftCommand):
    help = "Lift the log-in lockout of each USERNAME (forget its failed log-ins), recorded in the audit log."

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="+", type=str)

    def handle(self, *args, username, **options):
        self.lift_all([(name, None) for name in username], username)
