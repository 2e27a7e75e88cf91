-- An evaluator's judgement of a run's result (`accepted` or `rejected`), for what outcomes
-- cost: a run that succeeded but was sent back is not a success.
ALTER TABLE runs ADD COLUMN verdict TEXT;
