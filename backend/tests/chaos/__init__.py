"""The chaos run (`make chaos`): the identity invariants, checked while faults combine.

Two app instances (uvicorn processes with production settings) share one PostgreSQL and one
Cognito emulator, reached through a proxy that breaks calls. For CHAOS_SECONDS, admins create,
rename, re-role, deactivate, reactivate and reset users through either instance; users sign in
through the emulator, refresh their sessions and call /users/me, presenting the refreshed tokens
of sessions a deactivation ended; /health is probed twice a second per instance. Meanwhile
faults fire at random, several at once: Cognito errors, throttling, hangs, lost answers and
calls that land late (`tests.chaos.proxy`); table and row lock windows, read-only windows, a
killed LISTEN connection (`tests.chaos.stack`); an instance SIGKILLed and restarted; a user
made in the console with a known password whose email an admin then creates; `reconcile
--apply` mid-run; a create intent the worker's handler cannot read. An admin gives up on some
creates that answer 503 (their intents settle).

Then the faults stop, and within 60 s (`tests.chaos.invariants`):
- no 500 ever, and every 503 of the API says when to retry;
- no token of a session begun before a deactivation is accepted after that deactivation answered;
- /health never starved;
- no orphan either side, Cognito's enabled state and role group match every row, no work
  pending, and `reconcile --json` reports no drift;
- no create answered 409 email_taken unless a row held the email when it answered, and no
  other 409 for the harness's own emails but create_in_progress;
- a console-made user's email is 409 cognito_user_exists, its password untouched;
- reconcile --apply during the run never crashed;
- every active user, signing in anew, is served by both instances.

The harness reads the apps through their public faces only (HTTP, the `users` table, Cognito's
API, the reconcile command), except `stack.pending_background_work` (the outbox, through the
apps' own queries) and `stack.kill_listeners` (which sessions are LISTEN connections).
"""
