from django.apps import AppConfig


class AxesCommandsConfig(AppConfig):
    name = "controlplane.axes_commands"
    label = "slipway_axes_commands"
    verbose_name = "Log-in lockouts lifted from the command line, audited"
