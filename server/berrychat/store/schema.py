"""Schema migrations for SQLite and MariaDB/MySQL.

Each migration is recorded in `schema_migrations`; every statement is idempotent
(`IF NOT EXISTS`), so `berrychat migrate` is safe to re-run, even after an interrupted run
(MariaDB commits DDL implicitly).
"""

from __future__ import annotations

_MYSQL_TAIL = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

MIGRATIONS: list[tuple[int, str, dict[str, list[str]]]] = [
    (
        1,
        "initial schema: users, sessions, conversations, members, messages, reactions",
        {
            "sqlite": [
                """CREATE TABLE IF NOT EXISTS users (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    username TEXT NOT NULL UNIQUE,
                    display_name TEXT NOT NULL DEFAULT '',
                    password_hash TEXT NOT NULL,
                    role TEXT NOT NULL DEFAULT 'user',
                    disabled INTEGER NOT NULL DEFAULT 0,
                    created_at INTEGER NOT NULL)""",
                """CREATE TABLE IF NOT EXISTS sessions (
                    token_hash TEXT PRIMARY KEY,
                    user_id INTEGER NOT NULL,
                    device_id TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    UNIQUE (user_id, device_id)) WITHOUT ROWID""",
                """CREATE TABLE IF NOT EXISTS conversations (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    kind TEXT NOT NULL,
                    title TEXT NOT NULL DEFAULT '',
                    direct_key TEXT UNIQUE,
                    created_by INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL,
                    last_seq INTEGER NOT NULL DEFAULT 0,
                    last_msg_seq INTEGER NOT NULL DEFAULT 0,
                    member_count INTEGER NOT NULL DEFAULT 0)""",
                """CREATE TABLE IF NOT EXISTS members (
                    conversation_id INTEGER NOT NULL,
                    user_id INTEGER NOT NULL,
                    role TEXT NOT NULL DEFAULT 'member',
                    joined_at INTEGER NOT NULL,
                    read_seq INTEGER NOT NULL DEFAULT 0,
                    delivered_seq INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (conversation_id, user_id)) WITHOUT ROWID""",
                "CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, conversation_id)",
                """CREATE TABLE IF NOT EXISTS messages (
                    conversation_id INTEGER NOT NULL,
                    seq INTEGER NOT NULL,
                    sender_id INTEGER NOT NULL,
                    cid TEXT,
                    kind TEXT NOT NULL,
                    body TEXT NOT NULL,
                    target_seq INTEGER,
                    extra TEXT,
                    created_at INTEGER NOT NULL,
                    edited_at INTEGER,
                    recalled_at INTEGER,
                    PRIMARY KEY (conversation_id, seq),
                    UNIQUE (conversation_id, sender_id, cid)) WITHOUT ROWID""",
                """CREATE TABLE IF NOT EXISTS reactions (
                    conversation_id INTEGER NOT NULL,
                    seq INTEGER NOT NULL,
                    user_id INTEGER NOT NULL,
                    emoji TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    PRIMARY KEY (conversation_id, seq, user_id, emoji)) WITHOUT ROWID""",
                "CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at)",
            ],
            "mysql": [
                """CREATE TABLE IF NOT EXISTS users (
                    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                    username VARCHAR(64) NOT NULL,
                    display_name VARCHAR(200) NOT NULL DEFAULT '',
                    password_hash VARCHAR(255) NOT NULL,
                    role VARCHAR(16) NOT NULL DEFAULT 'user',
                    disabled TINYINT NOT NULL DEFAULT 0,
                    created_at BIGINT NOT NULL,
                    UNIQUE KEY users_username (username))"""
                + _MYSQL_TAIL,
                """CREATE TABLE IF NOT EXISTS sessions (
                    token_hash CHAR(64) NOT NULL PRIMARY KEY,
                    user_id BIGINT NOT NULL,
                    device_id VARCHAR(64) NOT NULL,
                    created_at BIGINT NOT NULL,
                    expires_at BIGINT NOT NULL,
                    UNIQUE KEY sessions_device (user_id, device_id),
                    KEY sessions_expiry (expires_at))"""
                + _MYSQL_TAIL,
                """CREATE TABLE IF NOT EXISTS conversations (
                    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                    kind VARCHAR(16) NOT NULL,
                    title VARCHAR(200) NOT NULL DEFAULT '',
                    direct_key VARCHAR(64) NULL,
                    created_by BIGINT NOT NULL,
                    created_at BIGINT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    last_seq BIGINT NOT NULL DEFAULT 0,
                    last_msg_seq BIGINT NOT NULL DEFAULT 0,
                    member_count INT NOT NULL DEFAULT 0,
                    UNIQUE KEY conversations_direct (direct_key))"""
                + _MYSQL_TAIL,
                """CREATE TABLE IF NOT EXISTS members (
                    conversation_id BIGINT NOT NULL,
                    user_id BIGINT NOT NULL,
                    role VARCHAR(16) NOT NULL DEFAULT 'member',
                    joined_at BIGINT NOT NULL,
                    read_seq BIGINT NOT NULL DEFAULT 0,
                    delivered_seq BIGINT NOT NULL DEFAULT 0,
                    PRIMARY KEY (conversation_id, user_id),
                    KEY members_by_user (user_id, conversation_id))"""
                + _MYSQL_TAIL,
                """CREATE TABLE IF NOT EXISTS messages (
                    conversation_id BIGINT NOT NULL,
                    seq BIGINT NOT NULL,
                    sender_id BIGINT NOT NULL,
                    cid VARCHAR(64) NULL,
                    kind VARCHAR(16) NOT NULL,
                    body MEDIUMTEXT NOT NULL,
                    target_seq BIGINT NULL,
                    extra TEXT NULL,
                    created_at BIGINT NOT NULL,
                    edited_at BIGINT NULL,
                    recalled_at BIGINT NULL,
                    PRIMARY KEY (conversation_id, seq),
                    UNIQUE KEY messages_cid (conversation_id, sender_id, cid))"""
                + _MYSQL_TAIL,
                """CREATE TABLE IF NOT EXISTS reactions (
                    conversation_id BIGINT NOT NULL,
                    seq BIGINT NOT NULL,
                    user_id BIGINT NOT NULL,
                    emoji VARCHAR(32) NOT NULL,
                    created_at BIGINT NOT NULL,
                    PRIMARY KEY (conversation_id, seq, user_id, emoji))"""
                + _MYSQL_TAIL,
            ],
        },
    ),
    (
        2,
        "bots: API token hashes and outgoing webhooks of bot accounts",
        {
            "sqlite": [
                """CREATE TABLE IF NOT EXISTS bots (
                    user_id INTEGER PRIMARY KEY,
                    created_by INTEGER NOT NULL,
                    token_hash TEXT UNIQUE,
                    webhook_url TEXT NOT NULL DEFAULT '',
                    webhook_secret TEXT NOT NULL DEFAULT '',
                    events TEXT NOT NULL DEFAULT 'messages,mentions',
                    created_at INTEGER NOT NULL)""",
            ],
            "mysql": [
                """CREATE TABLE IF NOT EXISTS bots (
                    user_id BIGINT NOT NULL PRIMARY KEY,
                    created_by BIGINT NOT NULL,
                    token_hash CHAR(64) NULL,
                    webhook_url VARCHAR(2000) NOT NULL DEFAULT '',
                    webhook_secret VARCHAR(128) NOT NULL DEFAULT '',
                    events VARCHAR(64) NOT NULL DEFAULT 'messages,mentions',
                    created_at BIGINT NOT NULL,
                    UNIQUE KEY bots_token (token_hash))"""
                + _MYSQL_TAIL,
            ],
        },
    ),
    (
        3,
        "attachments: uploaded files and the messages that reference them",
        {
            "sqlite": [
                """CREATE TABLE IF NOT EXISTS attachments (
                    id TEXT PRIMARY KEY,
                    uploader_id INTEGER NOT NULL,
                    kind TEXT NOT NULL,
                    name TEXT NOT NULL DEFAULT '',
                    mime TEXT NOT NULL,
                    size INTEGER NOT NULL,
                    sha256 TEXT NOT NULL,
                    meta TEXT,
                    parent_id TEXT,
                    created_at INTEGER NOT NULL) WITHOUT ROWID""",
                "CREATE INDEX IF NOT EXISTS attachments_sha ON attachments (sha256)",
                """CREATE TABLE IF NOT EXISTS attachment_refs (
                    attachment_id TEXT NOT NULL,
                    conversation_id INTEGER NOT NULL,
                    seq INTEGER NOT NULL,
                    PRIMARY KEY (attachment_id, conversation_id, seq)) WITHOUT ROWID""",
            ],
            "mysql": [
                """CREATE TABLE IF NOT EXISTS attachments (
                    id VARCHAR(32) NOT NULL PRIMARY KEY,
                    uploader_id BIGINT NOT NULL,
                    kind VARCHAR(16) NOT NULL,
                    name VARCHAR(255) NOT NULL DEFAULT '',
                    mime VARCHAR(100) NOT NULL,
                    size BIGINT NOT NULL,
                    sha256 CHAR(64) NOT NULL,
                    meta TEXT NULL,
                    parent_id VARCHAR(32) NULL,
                    created_at BIGINT NOT NULL,
                    KEY attachments_sha (sha256))"""
                + _MYSQL_TAIL,
                """CREATE TABLE IF NOT EXISTS attachment_refs (
                    attachment_id VARCHAR(32) NOT NULL,
                    conversation_id BIGINT NOT NULL,
                    seq BIGINT NOT NULL,
                    PRIMARY KEY (attachment_id, conversation_id, seq))"""
                + _MYSQL_TAIL,
            ],
        },
    ),
    (
        4,
        "attachments: per-user quota index; since when an upload is unreferenced (orphan sweep)",
        {
            "sqlite": [
                "CREATE INDEX IF NOT EXISTS attachments_uploader ON attachments (uploader_id)",
                """CREATE TABLE IF NOT EXISTS attachment_orphans (
                    attachment_id TEXT PRIMARY KEY,
                    since INTEGER NOT NULL) WITHOUT ROWID""",
                "CREATE INDEX IF NOT EXISTS attachment_orphans_since ON attachment_orphans (since)",
            ],
            "mysql": [
                "CREATE INDEX IF NOT EXISTS attachments_uploader ON attachments (uploader_id)",
                """CREATE TABLE IF NOT EXISTS attachment_orphans (
                    attachment_id VARCHAR(32) NOT NULL PRIMARY KEY,
                    since BIGINT NOT NULL,
                    KEY attachment_orphans_since (since))"""
                + _MYSQL_TAIL,
            ],
        },
    ),
]

LATEST = MIGRATIONS[-1][0]

BOOKKEEPING = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    "mysql": "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INT NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at BIGINT NOT NULL)"
    + _MYSQL_TAIL,
}
