"""`ecrf client add|list|disable|enable`: the registry of machine clients from the command line (audited as
the operator `cli`, with the admin role: the same checks and audit entries as /api/v1/admin/clients)."""

import argparse
import json
import sys
from pathlib import Path

from ecrf.auth.actor import Actor
from ecrf.config import Settings

OPERATOR = Actor(sub="cli", roles=frozenset({"admin"}))


def add_parser(commands) -> None:
    client = commands.add_parser("client", help="machine clients (SMART Backend Services)")
    actions = client.add_subparsers(dest="client_action", required=True)
    add = actions.add_parser("add", help="register a client; prints its id alone on the last line")
    add.add_argument("--name", required=True)
    add.add_argument("--role", required=True, help="ehr (with --site), sponsor or data_manager")
    add.add_argument("--site", default=None)
    add.add_argument("--scope", action="append", required=True, help="SMART system scopes, space-separated or repeated")
    keys = add.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks-file", type=Path, help="the client's public keys (a JWK Set file)")
    keys.add_argument("--jwks-uri", help="where the client publishes its JWK Set")
    actions.add_parser("list", help="registered clients (no key material)")
    for name in ("disable", "enable"):
        action = actions.add_parser(name, help=f"{name} a client")
        action.add_argument("client_id")
        action.add_argument("--reason", default=None)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from ecrf.db import make_engine
    from ecrf.smart import service
    from ecrf.store.migrate import upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    if args.client_action == "add":
        from study_model.loader import load_study

        try:
            jwks = json.loads(args.jwks_file.read_text()) if args.jwks_file else None
            client = service.add_client(
                engine,
                OPERATOR,
                load_study(settings.study_dir),
                name=args.name,
                role=args.role,
                site=args.site,
                scopes=" ".join(args.scope),
                jwks=jwks,
                jwks_uri=args.jwks_uri,
            )
        except (OSError, ValueError) as error:
            item = getattr(error, "item", "jwks-file")
            print(f"ecrf client add: {item}: {error}", file=sys.stderr)
            return 2
        print(
            f"registered {client.name} ({client.role}{' at ' + client.site if client.site else ''}), "
            f"scopes {client.scopes}"
        )
        print(client.id)
        return 0
    if args.client_action == "list":
        for client in service.list_clients(engine):
            print(
                "\t".join(
                    [
                        client.id,
                        client.name,
                        client.role,
                        client.site or "-",
                        "enabled" if client.enabled else "disabled",
                        client.scopes,
                    ]
                )
            )
        return 0
    client = service.set_enabled(engine, OPERATOR, args.client_id, args.client_action == "enable", args.reason)
    if client is None:
        print(f"ecrf client {args.client_action}: client {args.client_id} is not registered", file=sys.stderr)
        return 1
    print(f"{client.id} {'enabled' if client.enabled else 'disabled'}")
    return 0
