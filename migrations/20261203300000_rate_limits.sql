-- Shared rate limits (issue 10, item 7): token buckets kept in the database, so every edge process
-- (and any later endpoint) draws from the same buckets. One bucket per key ('webchat:msg:session:<…>',
-- 'webchat:new_session:addr:<…>' …); a bucket holds at most `capacity` tokens and gains `refill_per_s`
-- tokens a second. A bucket never touched, or full again, is the same as no row: rows are purged.
-- Unlogged: losing the buckets in a crash only forgives a few requests.
create unlogged table if not exists private.rate_limits (
  key text primary key,
  tokens double precision not null,
  updated_at timestamptz not null default clock_timestamp()
);
revoke all on private.rate_limits from public, anon, authenticated;
grant all on private.rate_limits to service_role;

/*
 * Take one token from bucket `key`. allowed: a token was there (and is now taken); otherwise
 * retry_after_s is the whole number of seconds until one will be (for a Retry-After header). A refused
 * call takes nothing. Serialised per key by the row lock; buckets of other keys never wait.
 */
create or replace function private.take_token(key text, capacity int, refill_per_s numeric,
                                              out allowed boolean, out retry_after_s int)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  now_ts timestamptz := clock_timestamp();
  rate double precision := greatest(coalesce(refill_per_s, 0), 0)::double precision;
  cap double precision := greatest(coalesce(capacity, 0), 0);
  have double precision;
  last timestamptz;
begin
  if cap < 1 then  -- a bucket of no tokens: refused for good (a switched-off endpoint)
    allowed := false;
    retry_after_s := 3600;
    return;
  end if;
  insert into private.rate_limits as r (key, tokens, updated_at) values (take_token.key, cap - 1, now_ts)
  on conflict (key) do nothing;
  if found then
    allowed := true;
    retry_after_s := 0;
  else
    select r.tokens, r.updated_at into have, last from private.rate_limits r where r.key = take_token.key for update;
    have := least(cap, have + greatest(extract(epoch from now_ts - last), 0) * rate);
    allowed := have >= 1;
    if allowed then
      have := have - 1;
      retry_after_s := 0;
    else
      retry_after_s := case when rate > 0 then greatest(1, ceil((1 - have) / rate))::int else 3600 end;
    end if;
    update private.rate_limits r set tokens = have, updated_at = now_ts where r.key = take_token.key;
  end if;
  -- Now and then, forget buckets idle for a day (full again for any sensible refill).
  if random() < 0.001 then
    delete from private.rate_limits r
    where r.key in (select x.key from private.rate_limits x where x.updated_at < now_ts - interval '1 day' limit 1000);
  end if;
end;
$$;
revoke execute on function private.take_token(text, int, numeric) from public, anon, authenticated;
grant execute on function private.take_token(text, int, numeric) to service_role;
