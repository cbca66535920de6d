"""django-axes' commands that lift log-in lockouts, under their own names, with an audit event.

The app is listed before `axes` in INSTALLED_APPS: of two apps with a command of one name, Django runs the
first one's. So `python manage.py axes_reset_username bob`, as django-axes documents it, goes through
`controlplane.services.lift_login_lockouts` and leaves a `login.lockout_reset` event.
"""
