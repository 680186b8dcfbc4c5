-- Speech marks a job asked for (`word`, `sentence`, `viseme`); NULL for none.
-- The marks file lives beside the audio: `audio/{hh}/{hash}.marks.json`,
-- and the content hash covers the marks asked for.
ALTER TABLE tasks ADD COLUMN marks text[];
