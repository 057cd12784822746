"""``dnsvr serve DIR``: the search service and the review page over one index, ordinary or sharded (uvicorn)."""

from __future__ import annotations

import secrets
from pathlib import Path

import typer

from dnsvr.cli._common import cli_errors, fail, warn


def serve_command(
    directory: Path = typer.Argument(..., help="Index directory (an ordinary or a sharded index)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: str = typer.Option(None, "--token", envvar="DNSVR_TOKEN",
                              help="Secret for writes (and for every request beyond loopback); env DNSVR_TOKEN."),
    token_file: Path = typer.Option(None, "--token-file", help="Read the token from this file (first line)."),
    media_root: list[Path] = typer.Option([], "--media-root",
                                          help="Folder whose files may be searched, added and played (repeatable)."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", help="Largest uploaded query file."),
    max_query_seconds: float = typer.Option(3600.0, "--max-query-seconds", help="Longest query video."),
    concurrency: int = typer.Option(2, "--concurrency", help="Searches running at once (more wait)."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds before a search answers 504."),
    ray: str = typer.Option(None, "--ray", help="Sharded index: search with one Ray actor per shard (auto, an "
                                                "address, or local; needs dnsvr[ray]). Default: in process."),
    allow_partial: bool = typer.Option(False, "--allow-partial",
                                       help="Sharded index: a shard that cannot answer is left out of the results "
                                            "(missing_shards) instead of the search answering 503."),
) -> None:
    """Serve the HTTP API (described at /openapi.json) and the review page at http://HOST:PORT/.

    Writes (add/remove jobs, verdicts) need the token; beyond loopback every request does. On
    loopback without --token a fresh token is made and the page's link carrying it is printed.

    Examples:

    \b
      dnsvr serve demo/index --media-root demo/videos
      dnsvr serve my.index --host 0.0.0.0 --port 8080 --token-file /etc/dnsvr/token --media-root /data/videos
      dnsvr serve big.index --ray auto --allow-partial --media-root /data/videos   # a sharded index on Ray
    """
    import uvicorn

    from dnsvr.serve import ServeConfig, create_app, is_loopback

    if token and token_file:
        fail("give --token or --token-file, not both")
    if token_file is not None:
        try:
            token = token_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            fail(f"--token-file: cannot read a token from {token_file}")
    public = not is_loopback(host)
    generated = False
    if token is None and not public:
        token = secrets.token_urlsafe(24)  # loopback: a fresh secret per run, shown in the page's URL
        generated = True
    with cli_errors():
        try:
            config = ServeConfig(index_path=directory, media_roots=tuple(media_root), token=token, public=public,
                                 max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                                 max_query_seconds=max_query_seconds, max_concurrent_searches=concurrency,
                                 search_timeout_s=timeout, ray=ray, allow_partial=allow_partial)
        except ValueError as exc:
            fail(str(exc))
        if ray is not None:  # join the cluster now: a missing extra or an unreachable cluster is one line, here
            from dnsvr.cluster._ray import connect

            connect(ray)
        app = create_app(config=config)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        # plain lines (never wrapped): the links must survive copy and paste
        warn(f"dnsvr serve: {directory} at {url}  (API description: {url}openapi.json)")
        if generated:
            warn(f"open the review page with its write token: {url}#token={token}")
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
