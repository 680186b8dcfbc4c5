-- How a task's audio is to be spoken (OpenAI's `instructions`), when the
-- route's provider takes them; they are part of the task's content hash, so
-- whoever makes its audio (the API inline, or a worker that takes the task
-- over) must send them too.
ALTER TABLE tasks
    ADD COLUMN instructions text CHECK (char_length(instructions) <= 4096);

COMMENT ON COLUMN tasks.instructions IS
    'How to speak (OpenAI instructions), sent to providers that take them; part of the content hash.';
