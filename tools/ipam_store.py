#!/usr/bin/env python3
"""The IPAM's PostgreSQL store from the command line: move a ledger file in and out, list it.

  tools/ipam_store.py import inventories/prod/ipam/roce-ledger.yml   (into an empty store)
  tools/ipam_store.py export inventories/prod/ipam/roce-ledger.yml   (written as the file backend does)
  tools/ipam_store.py list

The connection comes from libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD or ~/.pgpass,
PGDATABASE), or from IPAM_POSTGRESQL_DSN; nothing of it is printed. A file imported and
exported again is identical (tests/playbooks/test_ipam_postgresql.py).
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ipam_postgresql", ROOT / "library" / "ipam_postgresql.py")
store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["import", "export", "list"])
    parser.add_argument("path", nargs="?", help="the ledger file (import, export)")
    args = parser.parse_args()
    dsn = os.environ.get("IPAM_POSTGRESQL_DSN", "")
    if args.command != "list" and not args.path:
        parser.error(f"{args.command} needs the ledger file")
    try:
        if args.command == "import":
            print(f"imported {store.import_file(dsn, args.path)} allocations from {args.path}")
        elif args.command == "export":
            print(f"exported {store.export_file(dsn, args.path)} allocations to {args.path}")
        else:
            _, ledger, _ = store.allocate(dsn, lambda base: base, write=False, lock=False)
            for entry in ledger["allocations"]:
                print(entry["pool"], entry["host"], entry["device"], entry["ip"])
            for entry in ledger.get("released", []):
                print("released", entry["pool"], entry["host"], entry["device"], entry["ip"], entry["released_at"])
    except store.StoreError as error:
        sys.exit(f"ipam_store: {error}")
    except Exception as error:  # the ledger file's own problem: the filter's message names it
        sys.exit(f"ipam_store: {args.path}: {error}")


if __name__ == "__main__":
    main()
