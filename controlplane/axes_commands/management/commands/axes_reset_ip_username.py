from controlplane.axes_commands.management.commands._lift import LiftCommand


class Command(LiftCommand):
    help = "Forget the failed log-ins of USERNAME from IP (both at once), recorded in the audit log."

    def add_arguments(self, parser):
        parser.add_argument("ip", type=str)
        parser.add_argument("username", type=str)

    def handle(self, *args, ip, username, **options):
        self.lift_all([(username, ip)], [ip, username])
