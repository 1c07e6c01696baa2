<?php
// The demo's worker in PHP, the language of the reference systems: what
// `cargo xtask demo --php` runs 1000 times. It does what
// `dbslots-demo-worker work` does, with PDO:
//
// - connect (the server from DEMO_DB_HOST, DEMO_DB_PORT, DEMO_DB_NAME,
//   DEMO_DB_USER, DEMO_DB_PASSWORD: credentials never on a command line);
// - claim the queued rows of its shard (DBSLOTS_WORKER_INDEX) in a
//   transaction, record a result for each, commit;
// - keep the connection DEMO_HOLD_MS milliseconds in all, close it;
// - print one `DEMO-RESULT {json}` line with the refusals it met.
//
// It takes no slot itself: under `dbslots spawn` (adaptive) the spawner
// holds one for it (its stdin is the slot's lock), and in the batch mode it
// runs under `dbslots exec`, which holds one. With DEMO_NO_SLOTS=1 it makes
// the reference's five connect attempts (100 ms doubling), and with
// DEMO_START_AT (Unix milliseconds) it first waits for that moment, so that
// every worker connects at once, as the reference's did.

$entered = microtime(true);
$index = (int) getenv('DBSLOTS_WORKER_INDEX');
$hold_ms = (int) (getenv('DEMO_HOLD_MS') ?: 200);
$start_at = getenv('DEMO_START_AT');
$no_slots = getenv('DEMO_NO_SLOTS') === '1';
$table = 'demo_jobs';

if ($start_at !== false && $start_at !== '') {
    $wait = ((int) $start_at) / 1000.0 - microtime(true);
    if ($wait > 0) {
        usleep((int) ($wait * 1e6));
    }
    $entered = microtime(true);
}

$dsn = sprintf(
    'mysql:host=%s;port=%d;dbname=%s',
    getenv('DEMO_DB_HOST'),
    (int) getenv('DEMO_DB_PORT'),
    getenv('DEMO_DB_NAME')
);
$refusals = [];
$attempts = $no_slots ? 5 : 1;
$delay_ms = 100;
$pdo = null;
$error = null;
for ($attempt = 1; $attempt <= $attempts; $attempt++) {
    try {
        $pdo = new PDO($dsn, getenv('DEMO_DB_USER'), getenv('DEMO_DB_PASSWORD'), [
            PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
            PDO::ATTR_TIMEOUT => 5,
        ]);
        break;
    } catch (PDOException $e) {
        // "SQLSTATE[08004] [1040] Too many connections": the code in brackets.
        $code = preg_match('/\[(\d{4})\]/', $e->getMessage(), $m) ? $m[1] : 'other';
        $code = in_array($code, ['1040', '1203', '1226'], true) ? $code : 'other';
        $refusals[$code] = ($refusals[$code] ?? 0) + 1;
        $error = $e->getMessage();
        if ($attempt < $attempts) {
            usleep($delay_ms * 1000);
            $delay_ms = min($delay_ms * 2, 1000);
        }
    }
}

$rows = 0;
$connected_at_ms = null;
$connect_ms = null;
if ($pdo !== null) {
    $error = null;
    $connected = microtime(true);
    $connected_at_ms = $connected * 1000.0;
    $connect_ms = ($connected - $entered) * 1000.0;
    try {
        $pdo->beginTransaction();
        $claimed = $pdo->query(
            "SELECT id, payload FROM $table WHERE shard = $index AND state = 'queued' FOR UPDATE"
        )->fetchAll(PDO::FETCH_NUM);
        if ($claimed) {
            $cases = '';
            $ids = [];
            foreach ($claimed as [$id, $payload]) {
                $id = (int) $id;
                $cases .= sprintf(' WHEN %d THEN %d', $id, crc32($payload));
                $ids[] = $id;
            }
            $pdo->exec(
                "UPDATE $table SET state = 'done', worker = $index, processed = processed + 1, "
                . "result = CASE id$cases END WHERE id IN (" . implode(',', $ids) . ')'
            );
        }
        $pdo->commit();
        $rows = count($claimed);
    } catch (PDOException $e) {
        $error = $e->getMessage();
    }
    $rest = $hold_ms / 1000.0 - (microtime(true) - $connected);
    if ($rest > 0) {
        usleep((int) ($rest * 1e6));
    }
    $pdo = null; // closes the connection
}

$usage = getrusage();
$cpu_ms = ($usage['ru_utime.tv_sec'] + $usage['ru_stime.tv_sec']) * 1000.0
    + ($usage['ru_utime.tv_usec'] + $usage['ru_stime.tv_usec']) / 1000.0;
echo 'DEMO-RESULT ' . json_encode([
    'worker' => $index,
    'path' => $no_slots ? 'no-slots' : 'php',
    'ok' => $error === null,
    'rows' => $rows,
    'refusals' => (object) $refusals,
    'ms' => (int) ((microtime(true) - $entered) * 1000),
    'connect_ms' => $connect_ms,
    'connected_at_ms' => $connected_at_ms,
    'cpu_ms' => $cpu_ms,
    'error' => $error,
]) . "\n";
exit($error === null ? 0 : 1);
