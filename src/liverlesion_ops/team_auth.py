"""The team server's MLflow app: MLflow's basic-auth app and one rule more, on who may create a registered model.

MLflow lets any logged-in user create a registered model (and then grants the creator MANAGE on it). On the team
server that let a *reader* create ``<model>.registry-lock`` (and hold every gate, promote and rollback until the
lease ran out) or create the model itself before its first run and so become its manager. Here creating a
registered model, or renaming one to a name, is managing that name: the user must hold MANAGE on it through their
roles (the team's ``editor`` role holds MANAGE on every registered model; a ``reader`` holds READ), or be an admin.
Every other decision is MLflow's own: this rule runs after basic-auth's, only on requests it let through.

``liverlesion server start`` runs ``mlflow server --app-name liverlesion-auth``; the name is the ``mlflow.app``
entry point of this package (pyproject.toml). MLflow's CLI creates the admin user before it starts the workers
only for its own app name, so ``start`` does it first (``bootstrap``), as that CLI would. The rule uses MLflow
3.17's permission resolver for a registered model (``mlflow.server.auth._get_registered_model_permission``):
tests/test_team_server.py checks it through a real server, so an upgrade that moves it fails there, not silently.
"""

from __future__ import annotations

#: the registry routes that bring a registered-model name into existence (REST and the UI's ajax twin)
CREATING_ROUTES = ("/mlflow/registered-models/create", "/mlflow/registered-models/rename")


def _created_name() -> str | None:
    """The registered-model name a request would create (``name`` of a create, ``new_name`` of a rename)."""
    from flask import request

    if request.method != "POST" or not request.path.endswith(CREATING_ROUTES):
        return None
    body = request.get_json(silent=True) or {}
    key = "new_name" if request.path.endswith("/rename") else "name"
    name = body.get(key) if isinstance(body, dict) else None
    return name if isinstance(name, str) else None


def refuse_creation_without_manage():
    """Flask ``before_request``: a 403 for a non-admin creating a registered-model name they may not manage."""
    from mlflow.server import auth

    name = _created_name()
    if name is None or auth.sender_is_admin():
        return None
    if auth._get_registered_model_permission(name).can_manage:
        return None
    return auth.make_forbidden_response()


def bootstrap() -> None:
    """Create the auth tables and the admin user once, before any worker starts (``python -m liverlesion_ops.team_auth``
    in the server's environment): workers started together would otherwise race to migrate the database."""
    from mlflow.server.auth import bootstrap_admin_user, get_flask_server_secret_key

    get_flask_server_secret_key()
    bootstrap_admin_user()


def create_app():
    """MLflow's basic-auth app (Flask, or FastAPI around it under uvicorn) with the creation rule after its own."""
    from mlflow.server import app
    from mlflow.server.auth import create_app as basic_auth

    served = basic_auth(app)
    app.before_request(refuse_creation_without_manage)  # after basic-auth's: the user is authenticated by then
    return served


if __name__ == "__main__":
    bootstrap()
