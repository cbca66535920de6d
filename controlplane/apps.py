from django.apps import AppConfig


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "Slipway control plane"

    def ready(self) -> None:
        from controlplane import checks  # noqa: F401  (registers the deploy checks)
