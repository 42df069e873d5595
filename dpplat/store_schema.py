"""The run store's schema, as the list of migrations that build it: version N is ``MIGRATIONS[:N]``.

A new version appends a migration; :class:`dpplat.store.RunStore` applies the missing ones in
one transaction. Statements are separated by semicolons (none appears inside a statement).
"""

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        dataset TEXT NOT NULL,
        model TEXT NOT NULL,
        config TEXT NOT NULL,
        noise_multiplier REAL,
        max_grad_norm REAL,
        clipping TEXT,
        sample_rate REAL,
        batch_size INTEGER,
        dataset_size INTEGER,
        accountant TEXT,
        target_epsilon REAL,
        delta REAL,
        epsilon REAL,
        steps INTEGER DEFAULT 0,
        accuracy REAL,
        status TEXT NOT NULL DEFAULT 'running',
        message TEXT,
        statement TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        epsilon REAL,
        loss REAL,
        accuracy REAL,
        test_accuracy REAL,
        time REAL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE audits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        results TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
        audit_id INTEGER REFERENCES audits(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX steps_by_run ON steps(run_id, step);
    CREATE INDEX audits_by_run ON audits(run_id);
    CREATE INDEX artifacts_by_run ON artifacts(run_id);
    """,
    # version 2: the store's identity, steps charged to the accountant, the last checkpoint, owners and heartbeats
    """
    CREATE TABLE store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO store_info (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
    ALTER TABLE runs ADD COLUMN spent_steps INTEGER NOT NULL DEFAULT 0;
    UPDATE runs SET spent_steps = COALESCE(steps, 0);
    ALTER TABLE runs ADD COLUMN checkpoint_step INTEGER;
    ALTER TABLE runs ADD COLUMN owner_pid INTEGER;
    ALTER TABLE runs ADD COLUMN owner_host TEXT;
    ALTER TABLE runs ADD COLUMN heartbeat_at REAL;
    ALTER TABLE audits ADD COLUMN owner_pid INTEGER;
    ALTER TABLE audits ADD COLUMN owner_host TEXT;
    ALTER TABLE audits ADD COLUMN heartbeat_at REAL;
    """,
    # version 3: "cifar10" names the original CIFAR-10; runs and audits stored before it name the JPEG q75 copy
    """
    UPDATE runs SET dataset = 'cifar10-jpeg', config = json_set(config, '$.dataset', 'cifar10-jpeg')
        WHERE dataset = 'cifar10';
    UPDATE audits SET params = json_set(params, '$.dataset', 'cifar10-jpeg')
        WHERE CASE WHEN json_valid(params) THEN json_extract(params, '$.dataset') END = 'cifar10';
    """,
]
