"""The architecture omnid replaces: an HTTP service on a loopback port (FastAPI on
uvicorn) with a sqlite3 get_or_create keyed by process id.
``python bench/baseline_app.py PORT DB``."""

from __future__ import annotations

import sqlite3
import sys
import time
import uuid

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

DB = sys.argv[2] if len(sys.argv) > 2 else "baseline.db"
app = FastAPI()


def connect() -> sqlite3.Connection:
    db = sqlite3.connect(DB, timeout=5)
    db.execute("PRAGMA journal_mode = WAL")
    return db


with connect() as _db:
    _db.execute(
        "CREATE TABLE IF NOT EXISTS tool_sessions (session_id TEXT PRIMARY KEY, tool_id TEXT, process_id INTEGER, "
        "started_at REAL, last_activity REAL, ended_at REAL)"
    )
    _db.execute("CREATE INDEX IF NOT EXISTS by_pid ON tool_sessions (process_id, tool_id) WHERE ended_at IS NULL")


class GetOrCreate(BaseModel):
    tool_id: str
    process_id: int


@app.post("/sessions/get_or_create")
def get_or_create(req: GetOrCreate) -> dict:
    db = connect()
    try:
        now = time.time()
        row = db.execute(
            "SELECT session_id FROM tool_sessions WHERE process_id = ? AND tool_id = ? AND ended_at IS NULL",
            (req.process_id, req.tool_id),
        ).fetchone()
        if row:
            db.execute("UPDATE tool_sessions SET last_activity = ? WHERE session_id = ?", (now, row[0]))
            db.commit()
            return {"status": "existing", "session_id": row[0]}
        sid = str(uuid.uuid4())
        row = (sid, req.tool_id, req.process_id, now, now)
        db.execute("INSERT INTO tool_sessions VALUES (?, ?, ?, ?, ?, NULL)", row)
        db.commit()
        return {"status": "created", "session_id": sid}
    finally:
        db.close()


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
