from django.apps import AppConfig


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "Slipway control plane"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from controlplane import checks  # noqa: F401  (registers the deploy checks)
        from controlplane.logins import record_failed_login, record_login

        user_logged_in.connect(record_login, dispatch_uid="slipway.audit.login")
        user_login_failed.connect(record_failed_login, dispatch_uid="slipway.audit.login_failed")
