-- Where the worker holding a run listens (its WorkerService), so that a cancellation (by a user
-- or by overlap policy cancel_other) reaches it at once. Keep in step with the other dialect.
ALTER TABLE runs ADD COLUMN worker_endpoint TEXT;
