-- The session (a thread of runs and calls) and the end user a span belongs to, taken from its
-- attributes (`session.id`, `user.id`) when it arrives, so traces can be found by either.
ALTER TABLE spans ADD COLUMN session_id TEXT;
ALTER TABLE spans ADD COLUMN end_user TEXT;
CREATE INDEX spans_session ON spans (session_id, start_ns);
CREATE INDEX spans_end_user ON spans (end_user, start_ns);
