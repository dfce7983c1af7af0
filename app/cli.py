"""Manage API users and publish models.

python -m app.cli users create alice --scope predict      (prompts for the password)
python -m app.cli users list | disable NAME | enable NAME | reset-password NAME | delete NAME
python -m app.cli users set-scopes NAME --scope predict    (replaces the user's scopes)
python -m app.cli clients create NAME --scope predict     (a service client: prints its id and secret once)
python -m app.cli clients list | rotate CLIENT_ID | disable CLIENT_ID | delete CLIENT_ID
python -m app.cli models publish [--serve] [--force]      (after dvc repro: models/ to the model store)
python -m app.cli models import SOURCE [--sample CSV] [--target COLUMN] [--name NAME] [--serve] [--force]
    [--tolerance X]       (a model trained elsewhere: compiled to ONNX, checked for parity, published)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings, settings_error
from app.core.credentials import client_subject, revoke_key
from app.core.revocation import Revocation, revoke_user
from app.core.security import SCOPES, use_password_cost
from app.db import api_keys, crud, service_clients
from app.db.refresh_tokens import RefreshTokens
from app.db.revocations import revocation_store
from app.db.session import Database

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
users = typer.Typer(no_args_is_help=True, help="Create, list, disable, reset or delete users.")
cli.add_typer(users, name="users")
clients = typer.Typer(
    no_args_is_help=True, help="Service clients (OAuth2 client credentials): create, list, rotate, disable."
)
cli.add_typer(clients, name="clients")
models = typer.Typer(
    no_args_is_help=True, help="Publish the pipeline's output, or import a model trained elsewhere."
)
cli.add_typer(models, name="models")

PasswordOption = Annotated[
    str,
    typer.Option(prompt=True, confirmation_prompt=True, hide_input=True, envvar="PREDICTOR_NEW_PASSWORD"),
]


@contextmanager
def _session() -> Iterator[Session]:
    with _database() as (database, _), database.session() as session:
        yield session


@contextmanager
def _database() -> Iterator[tuple[Database, Settings]]:
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise typer.Exit(_fail(settings_error(exc))) from None
    use_password_cost(settings.password_cost)
    database = Database(settings.database_url)
    try:
        database.migrate()
        yield database, settings
    except crud.UserError as exc:
        raise typer.Exit(_fail(str(exc))) from None
    finally:
        database.dispose()


def _change_and_withdraw(
    username: str, change: Callable[[Session], object], kept_scopes: list[str] | None = None
) -> None:
    """Make the change, then withdraw every token the user holds, and their API keys (those with a
    scope outside `kept_scopes`, when given): the running replicas refuse them within
    REVOCATION_REFRESH_SECONDS."""
    with _database() as (database, settings):
        with database.session() as session:
            change(session)
            withdrawn = api_keys.revoke_owned(session, username, kept_scopes)
        RefreshTokens(database.session, 60.0 * settings.refresh_token_expire_minutes).withdraw_user(username)
        _revoke(database, settings, [revoke_user(username, settings.longest_token_seconds)], withdrawn)


def _revoke(
    database: Database, settings: Settings, revocations: list[Revocation], key_ids: list[str]
) -> None:
    store = revocation_store(settings.redis_url, database.session, settings.longest_token_seconds)
    try:
        for revocation in [*revocations, *(revoke_key(key_id) for key_id in key_ids)]:
            store.add(revocation)
    except Exception as exc:
        message = f"done, but the tokens could not be revoked ({type(exc).__name__}: {exc}): retry"
        raise typer.Exit(_fail(message)) from None


def _fail(message: str) -> int:
    typer.echo(f"users: error: {message}", err=True)
    return 1


@users.command()
def create(
    username: str,
    password: PasswordOption,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help=f"Repeatable: {', '.join(SCOPES)}")
    ] = None,
) -> None:
    """Create a user (scope predict unless given)."""
    with _session() as session:
        user = crud.create_user(session, username, password, scope or ["predict"])
    typer.echo(f"created {user.username} (scopes: {user.scopes})")


@users.command("list")
def list_() -> None:
    """List users with their scopes."""
    with _session() as session:
        rows = crud.list_users(session)
    if not rows:
        typer.echo("no users")
    for user in rows:
        state = "disabled" if user.disabled else "active"
        typer.echo(
            f"{user.username:<24} {user.scopes:<16} {state:<8} created {user.created_at:%Y-%m-%d %H:%M}"
        )


@users.command()
def disable(username: str) -> None:
    """Refuse new tokens to a user, and withdraw the ones they hold."""
    _change_and_withdraw(username, lambda session: crud.set_disabled(session, username, True))
    typer.echo(f"disabled {username}")


@users.command()
def enable(username: str) -> None:
    """Re-enable a disabled user."""
    with _session() as session:
        crud.set_disabled(session, username, False)
    typer.echo(f"enabled {username}")


@users.command("reset-password")
def reset_password(username: str, password: PasswordOption) -> None:
    """Set a new password, and withdraw the tokens got with the old one."""
    _change_and_withdraw(
        username, lambda session: crud.set_password(session, username, password), kept_scopes=list(SCOPES)
    )
    typer.echo(f"password reset for {username}")


@users.command("set-scopes")
def set_scopes(
    username: str,
    scope: Annotated[list[str], typer.Option("--scope", "-s", help=f"Repeatable: {', '.join(SCOPES)}")],
) -> None:
    """Replace a user's scopes, and withdraw the tokens they hold (they sign in again)."""
    _change_and_withdraw(
        username, lambda session: crud.set_scopes(session, username, scope), kept_scopes=scope
    )
    typer.echo(f"{username} now has the scopes {' '.join(sorted(set(scope)))}")


@users.command()
def delete(
    username: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False
) -> None:
    """Delete a user."""
    if not yes:
        typer.confirm(f"Delete {username}?", abort=True)
    _change_and_withdraw(username, lambda session: crud.delete_user(session, username))
    typer.echo(f"deleted {username}")


@clients.command("create")
def create_client(
    name: str,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help=f"Repeatable: {', '.join(SCOPES)}")
    ] = None,
) -> None:
    """Create a service client (scope predict unless given); prints its id and secret, once."""
    with _session() as session:
        issued = service_clients.create_client(session, name, scope or ["predict"])
    _print_secret(issued, f"created {issued.client.name} (scopes: {issued.client.scopes})")


@clients.command("list")
def list_clients() -> None:
    """List service clients with their scopes (never their secrets)."""
    with _session() as session:
        rows = service_clients.list_clients(session)
    if not rows:
        typer.echo("no clients")
    for client in rows:
        state = "disabled" if client.disabled else "active"
        typer.echo(
            f"{client.client_id:<20} {client.name:<24} {client.scopes:<16} {state:<8} "
            f"created {client.created_at:%Y-%m-%d %H:%M}"
        )


@clients.command("rotate")
def rotate_client(client_id: str) -> None:
    """A new secret, printed once; the previous one keeps working for 24 hours."""
    with _session() as session:
        issued = service_clients.rotate_secret(session, client_id)
    _print_secret(issued, "rotated: the previous secret works for 24 more hours")


@clients.command("disable")
def disable_client(client_id: str) -> None:
    """Refuse the client new tokens, and withdraw its tokens and API keys."""
    _withdraw_client(client_id, lambda session: service_clients.set_disabled(session, client_id, True))
    typer.echo(f"disabled {client_id}")


@clients.command("delete")
def delete_client(
    client_id: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False
) -> None:
    """Delete a client, withdrawing its tokens and API keys."""
    if not yes:
        typer.confirm(f"Delete {client_id}?", abort=True)
    _withdraw_client(client_id, lambda session: service_clients.delete_client(session, client_id))
    typer.echo(f"deleted {client_id}")


def _withdraw_client(client_id: str, change: Callable[[Session], object]) -> None:
    subject = client_subject(client_id)
    with _database() as (database, settings):
        with database.session() as session:
            change(session)
            withdrawn = api_keys.revoke_owned(session, subject)
        _revoke(database, settings, [revoke_user(subject, settings.longest_token_seconds)], withdrawn)


def _print_secret(issued: service_clients.Issued, said: str) -> None:
    typer.echo(said)
    typer.echo(f"client_id:     {issued.client.client_id}")
    typer.echo(f"client_secret: {issued.secret}")
    typer.echo("The secret is shown this once: keep it in your secret store.")


@models.command()
def publish(
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Make it the champion on every replica, through the promotion gate."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --serve: skip the promotion gate.")] = False,
) -> None:
    """Publish MODEL_DIR (models/, what dvc repro wrote) as a version in MODEL_STORE_URL."""
    from app.publish import PublishError, publish_model_dir

    if force and not serve:
        raise typer.BadParameter("it skips the promotion gate of --serve: use both", param_hint="--force")
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise typer.Exit(_fail_models(settings_error(exc))) from None
    try:
        for line in publish_model_dir(settings, serve=serve, force=force):
            typer.echo(line)
    except PublishError as exc:
        raise typer.Exit(_fail_models(str(exc))) from None


@models.command("import")
def import_(
    source: Annotated[
        str,
        typer.Argument(
            help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, an MLflow model folder, or a "
            "LightGBM (text), XGBoost (.json, .ubj), CatBoost (.cbm), ONNX or joblib file"
        ),
    ],
    sample: Annotated[
        Path | None,
        typer.Option(help="A CSV of real rows: the columns, the parity check, drift's reference, the gate."),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="The sample's ground-truth column: metrics, the gate, drift.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The model's name (default: the file's or the registry's).")
    ] = None,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Make it the champion on every replica, through the promotion gate."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --serve: skip the promotion gate.")] = False,
    tolerance: Annotated[
        float | None,
        typer.Option(help="Parity: the largest probability or value difference accepted (default 1e-5)."),
    ] = None,
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the outcome as one JSON line last (POST /models/import reads it)."
        ),
    ] = False,
    no_code: Annotated[
        bool,
        typer.Option("--no-code", hidden=True, help="Refuse pickles and MLflow models (the HTTP route's)."),
    ] = False,
    upload_name: Annotated[str | None, typer.Option(hidden=True, help="An uploaded file's own name.")] = None,
    sample_name: Annotated[
        str | None, typer.Option(hidden=True, help="An uploaded sample's own name.")
    ] = None,
) -> None:
    """Import a model trained elsewhere: compiled to ONNX, checked against its library, published.

    A joblib file unpickles, so it runs code: import only files you trust."""
    from app.importing.importer import import_model
    from app.importing.request import ImportRequest

    if force and not serve:
        raise typer.BadParameter("it skips the promotion gate of --serve: use both", param_hint="--force")
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise typer.Exit(_fail_models(settings_error(exc))) from None
    request = ImportRequest(
        source=source,
        sample=sample,
        target=target,
        name=name,
        serve=serve,
        force=force,
        tolerance=tolerance,
        allow_code=not no_code,
        upload_name=upload_name,
        sample_name=sample_name,
    )
    outcome = import_model(settings, request, say=typer.echo)
    if outcome.status == "imported":
        typer.echo(f"imported {outcome.version}")
    else:
        _fail_models(f"import refused at {outcome.step}: {outcome.error}; nothing published")
    if json_:
        typer.echo(outcome.model_dump_json())  # last, as --json says
    if outcome.status == "refused":
        raise typer.Exit(1)


def _fail_models(message: str) -> int:
    typer.echo(f"models: error: {message}", err=True)
    return 1


if __name__ == "__main__":
    cli()
