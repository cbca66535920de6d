from controlplane.axes_commands.management.commands._lift import LiftCommand


class Command(LiftCommand):
    help = "Lift the log-in lockout of each IP address (forget its failed log-ins), recorded in the audit log."

    def add_arguments(self, parser):
        parser.add_argument("ip", nargs="+", type=str)

    def handle(self, *args, ip, **options):
        self.lift_all([(None, address) for address in ip], ip)
