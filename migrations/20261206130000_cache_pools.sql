-- The audio cache is private to a tenant unless the tenant opts into a named
-- cache pool: the cache scope (the tenant, or its pool) is part of every
-- content hash, so nothing about another scope's texts can be observed.
ALTER TABLE tenants ADD COLUMN cache_pool text
    CHECK (cache_pool ~ '^[a-z0-9][a-z0-9_-]{0,62}$');
