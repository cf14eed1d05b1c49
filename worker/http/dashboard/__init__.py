"""The dashboard on the HTTP application: the status page, a login, and an admin's actions."""
