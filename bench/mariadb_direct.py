"""Scenario (c) on MariaDB: start a private mariadbd (Debian's mariadb-server, like the server
tests do: temporary datadir, free loopback port), write a bench config for it and run
`berrychat bench --scenario direct --config <that file>` on it, then stop it.

    .venv/bin/python bench/mariadb_direct.py [extra berrychat bench options]

mariadbd itself is not pinned (on a Pi fleet the database has its own cores or its own Pi);
the BerryChat server is pinned to CPU 0 and the generator to CPU 1 as usual. The open-loop steps
default to 1,000..7,000 msgs/s here (the target is 5,000/s); `--direct-rates` overrides them."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server" / "tests"))

from support import MariaDB  # noqa: E402

m = MariaDB()
try:
    m.start()
    cfg = {
        "database": {
            "type": "mysql",
            "host": "127.0.0.1",
            "port": m.port,
            "user": "root",
            "password": "",
            "database": m.new_database(),
            "pool_size": 16,
        }
    }
    path = Path(tempfile.mkdtemp(prefix="berrychat-bench-")) / "mariadb.json"
    path.write_text(json.dumps(cfg))
    cmd = [str(ROOT / ".venv" / "bin" / "berrychat"), "bench", "--scenario", "direct"]
    cmd += ["--config", str(path)]
    if not any(a.startswith("--direct-rates") for a in sys.argv[1:]):
        cmd += ["--direct-rates", "1000,2000,3000,4000,5000,6000,7000"]
    cmd += sys.argv[1:]
    sys.exit(subprocess.call(cmd))
finally:
    m.stop()
