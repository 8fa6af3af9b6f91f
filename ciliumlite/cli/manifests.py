"""``ciliumlite apply -f FILE`` and ``ciliumlite delete -f FILE``: Kubernetes manifests into the kvstore.

Like kubectl: one line per object on stdout (``service/web created``, ``… (dry run)``), warnings on
stderr as ``Warning: …``, errors as ``error: FILE: document N (Kind ns/name): field.path: what``.
There is no in-memory store to apply to from a command (it would vanish when the command ends):
``--kvstore etcd --kvstore-endpoints URL`` names the store, and ``--dry-run`` alone checks the files
against an empty store.

Exit codes: 0 done; 1 a manifest is invalid (nothing was written), the store refused or failed, or
(``delete``) an object was not found; 2 usage (bad options, a file that does not exist).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ciliumlite.bpf.errors import CiliumliteError

FileOpt = Annotated[list[str], typer.Option(
    "--filename", "-f", metavar="FILE", help="a YAML or JSON manifest, a directory of them, or - for stdin")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="check and show what would change; write nothing")]
KvstoreOpt = Annotated[str | None, typer.Option("--kvstore", metavar="etcd", help="the kvstore (etcd)")]
EndpointsOpt = Annotated[str | None, typer.Option(
    "--kvstore-endpoints", metavar="URL[,URL]", help="etcd client URLs, e.g. http://127.0.0.1:2379")]
ClusterOpt = Annotated[str, typer.Option("--cluster", metavar="NAME", help="the cluster name in the kvstore keys")]
NamespaceOpt = Annotated[str, typer.Option(
    "--namespace", "-n", metavar="NS", help="the namespace of objects that name none")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict/--no-strict", help="unknown fields and unsupported kinds are errors (--no-strict: warnings)")]


def open_store(kvstore: str | None, endpoints: str | None, cluster: str) -> Any:
    """The store ``--kvstore``/``--kvstore-endpoints`` name: an ``EtcdStore`` that owns nothing (no
    lease), or, with no ``--kvstore``, None. Raises :class:`typer.BadParameter` for bad options and
    whatever ``EtcdStore`` raises (``KvstoreError``: etcd unreachable)."""
    if kvstore is None:
        if endpoints:
            raise typer.BadParameter("--kvstore-endpoints needs --kvstore etcd", param_hint="--kvstore")
        return None
    if kvstore != "etcd":
        raise typer.BadParameter(f"{kvstore!r}: the only kvstore is etcd", param_hint="--kvstore")
    urls = [u.strip() for u in (endpoints or "").split(",") if u.strip()]
    if not urls:
        raise typer.BadParameter("--kvstore etcd needs --kvstore-endpoints URL[,URL]", param_hint="--kvstore-endpoints")
    # Imported here: the etcd client (requests, etcd3gw) is loaded only by commands that talk to etcd.
    etcd = importlib.import_module("ciliumlite.cluster.etcd")
    return etcd.EtcdStore(urls, cluster=cluster)


def _read_files(files: Sequence[str], read: Callable[[list[Path]], Any], parse: Callable[[str, str], Any]) -> Any:
    """``read`` the files, or ``parse`` stdin for ``-``; a missing file is a usage error (exit 2)."""
    if not files:
        raise typer.BadParameter("at least one -f FILE", param_hint="-f")
    if list(files) == ["-"]:
        return parse(sys.stdin.read(), "<stdin>")
    if "-" in files:
        raise typer.BadParameter("- (stdin) cannot be combined with files", param_hint="-f")
    for f in files:
        if not Path(f).exists():
            raise typer.BadParameter(f"the path {f!r} does not exist", param_hint="-f")
    return read([Path(f) for f in files])


def _run(action: Callable[[Any], Any], kvstore: str | None, endpoints: str | None, cluster: str,
         dry_run: bool, ignore_not_found: bool = True) -> None:
    """Open the store, run ``action(store)``, print its result the kubectl way, exit with its code."""
    from ciliumlite.cluster.store import InMemoryStore
    from ciliumlite.manifests import ManifestError

    if kvstore is None and not dry_run:
        open_store(kvstore, endpoints, cluster)  # a usage error for --kvstore-endpoints alone
        raise typer.BadParameter("no store to write to: pass --kvstore etcd --kvstore-endpoints URL "
                                 "(or --dry-run to check the files only)", param_hint="--kvstore")
    store = None
    try:
        store = open_store(kvstore, endpoints, cluster)
        if store is None:
            typer.echo("note: no --kvstore: checked against an empty store", err=True)
            store = InMemoryStore()
        result = action(store)
    except ManifestError as exc:
        _invalid(exc)
    except (CiliumliteError, OSError) as exc:  # etcd unreachable (KvstoreError), a clash the store found
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()
    for warning in result.warnings:
        typer.echo(f"Warning: {warning}", err=True)
    for change in result.changes:
        if change.action == "not found":
            typer.echo(f"Error from store (NotFound): {change.ref.resource} \"{change.ref.name}\" not found", err=True)
        else:
            typer.echo(change.line(dry_run))
    raise typer.Exit(1 if result.not_found and not ignore_not_found else 0)


def apply_command(filename: FileOpt, dry_run: DryRunOpt = False, kvstore: KvstoreOpt = None,
                  kvstore_endpoints: EndpointsOpt = None, cluster: ClusterOpt = "default",
                  namespace: NamespaceOpt = "default", strict: StrictOpt = True) -> None:
    """Apply Kubernetes Service, EndpointSlice, Endpoints and Node manifests (YAML or JSON) to the kvstore.

    Every file is checked before anything is written; errors name the file, the document, the object
    and the field path. See docs/manifests.md.
    """
    from ciliumlite.manifests import ManifestError, apply, load, parse

    def read(paths: list[Path]) -> Any:
        return load(paths, strict=strict, namespace=namespace)

    try:
        docs = _read_files(filename, read, lambda text, src: parse(text, source=src, strict=strict,
                                                                   namespace=namespace))
    except ManifestError as exc:
        _invalid(exc)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _run(lambda store: apply(store, docs, dry_run=dry_run), kvstore, kvstore_endpoints, cluster, dry_run)


def delete_command(filename: FileOpt, dry_run: DryRunOpt = False, kvstore: KvstoreOpt = None,
                   kvstore_endpoints: EndpointsOpt = None, cluster: ClusterOpt = "default",
                   namespace: NamespaceOpt = "default",
                   ignore_not_found: Annotated[bool, typer.Option(
                       "--ignore-not-found", help="an object that is not there is not an error")] = False) -> None:
    """Delete the objects the manifests name (Service, EndpointSlice, Endpoints, Node) from the kvstore.

    Only apiVersion, kind, metadata.name and namespace (and an EndpointSlice's
    kubernetes.io/service-name label) are read, so a file that no longer validates can be deleted.
    """
    from ciliumlite.manifests import ManifestError, delete, load_refs, parse_refs

    try:
        refs = _read_files(filename, lambda paths: load_refs(paths, namespace=namespace),
                           lambda text, src: parse_refs(text, source=src, namespace=namespace))
    except ManifestError as exc:
        _invalid(exc)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _run(lambda store: delete(store, refs, dry_run=dry_run), kvstore, kvstore_endpoints, cluster, dry_run,
         ignore_not_found)


def _invalid(exc: Any) -> NoReturn:
    """Print every problem of a :class:`~ciliumlite.manifests.ManifestError`, one a line; exit 1."""
    for line in exc.errors:
        typer.echo(f"error: {line.line}", err=True)
    raise typer.Exit(1)
