-- The id a worker picks for one registration (RegisterRequest.registration): a retried Register that the control
-- plane had already made answers with the same worker. NULLs (clients that send none) never conflict.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS registration TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS workers_registration ON workers (registration);
