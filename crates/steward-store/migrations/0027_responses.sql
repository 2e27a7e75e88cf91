-- Responses API conversation state: each stored response, readable only within the scope it
-- was made in (its caller's owner), with the conversation it ends (chat messages, its own
-- output included) so a later request can continue from it by `previous_response_id`.
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    body TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- Swept after their retention (housekeeping).
CREATE INDEX responses_created ON responses (created_at);
