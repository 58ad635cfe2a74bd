package tetherredis

import "github.com/redis/go-redis/v9"

// Keys, under the prefix:
//
//	i:<instance>  string, the instance's advertise URL; PX the lease. Liveness.
//	s:<session>   hash, the session's record; PX three leases (owned), or the
//	              ttl given to Park or Release.
//	dir           "1", no TTL. Missing means the store is new or was wiped.
//	settle        "1", PX one lease. Present while records may be missing
//	              because the store lost them: Lookup answers "recovering".
//
// A session record's fields:
//
//	i  owner instance id (or the one that parked or ended it)
//	e  epoch, a decimal string; it grows by one at each handoff
//	s  status: absent while owned; "t" owned, taken from a park, and d kept
//	   until the first renewal; "p" parked, d is the state; "n" ended, d is
//	   the note
//	d  data, as s says
//
// Every write that depends on what a record says is one script, so that the
// check (owner and epoch: the fence) and the write are atomic.

// bornLua creates the directory marker of a new or wiped store, and opens
// the recovery window with it. KEYS: dir, settle; ARGV[w]: the window in ms.
func bornLua(dir, settle, window string) string {
	return `if redis.call('EXISTS', ` + dir + `) == 0 then
	redis.call('SET', ` + dir + `, '1')
	redis.call('SET', ` + settle + `, '1', 'PX', ` + window + `)
end
`
}

// claimScript: KEYS s, live, dir, settle; ARGV inst, url, leaseMs, recordMs.
// Returns the epoch, or 0 when the record is someone else's.
var claimScript = redis.NewScript(bornLua("KEYS[3]", "KEYS[4]", "ARGV[3]") + `
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local r = redis.call('HMGET', KEYS[1], 'i', 'e', 's')
if not r[1] then
	redis.call('HSET', KEYS[1], 'i', ARGV[1], 'e', '1')
	redis.call('PEXPIRE', KEYS[1], ARGV[4])
	return 1
end
if r[1] == ARGV[1] and (not r[3] or r[3] == 't') then
	return tonumber(r[2])
end
return 0
`)

// lookupScript: KEYS s, dir, settle; ARGV inst, liveness key prefix,
// leaseMs. Returns {status, instance, epoch, url or note}.
//
// The owner's liveness key is only known once the record is read, so it is
// not in KEYS; with a hash-tagged prefix it shares the record's slot.
var lookupScript = redis.NewScript(bornLua("KEYS[2]", "KEYS[3]", "ARGV[3]") + `
local r = redis.call('HMGET', KEYS[1], 'i', 'e', 's')
local unsure = redis.call('EXISTS', KEYS[3]) == 1
if not r[1] then
	if unsure then return {'recovering'} end
	return {'unknown'}
end
if r[3] == 'p' then return {'parked', r[1], r[2]} end
if r[3] == 'n' then return {'ended', r[1], r[2], redis.call('HGET', KEYS[1], 'd')} end
if r[1] == ARGV[1] then return {'here', r[1], r[2]} end
local url = redis.call('GET', ARGV[2] .. r[1])
if url then return {'remote', r[1], r[2], url} end
if unsure then return {'recovering', r[1], r[2]} end
return {'dead', r[1], r[2]}
`)

// renewScript: KEYS live, dir, settle, s1..sn; ARGV inst, url, leaseMs,
// recordMs, joined ("1" if this instance wrote its liveness before), e1..en.
// Returns {records written again, indexes (1-based) of lost sessions...}.
var renewScript = redis.NewScript(`
local recovered = false
if redis.call('EXISTS', KEYS[2]) == 0 then
	redis.call('SET', KEYS[2], '1')
	recovered = true
end
local was = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
if not was and ARGV[5] == '1' then recovered = true end
local out = {0}
for j = 4, #KEYS do
	local k, e = KEYS[j], ARGV[j + 2]
	local r = redis.call('HMGET', k, 'i', 'e', 's')
	if not r[1] then
		redis.call('HSET', k, 'i', ARGV[1], 'e', e)
		redis.call('PEXPIRE', k, ARGV[4])
		out[1] = out[1] + 1
	elseif r[1] == ARGV[1] and r[2] == e and (not r[3] or r[3] == 't') then
		if r[3] then redis.call('HDEL', k, 's', 'd') end
		redis.call('PEXPIRE', k, ARGV[4])
	else
		out[#out + 1] = j - 3
	end
end
if recovered or out[1] > 0 then
	redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
end
return out
`)

// releaseScript: KEYS s; ARGV inst, epoch, note, ttlMs ("0": no note kept).
// Returns 1, or 0 when the record is someone else's.
var releaseScript = redis.NewScript(`
local r = redis.call('HMGET', KEYS[1], 'i', 'e', 's')
if r[1] then
	if r[1] ~= ARGV[1] or r[2] ~= ARGV[2] or r[3] == 'p' then return 0 end
	if r[3] == 'n' then return 1 end
end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '0' then
	redis.call('HSET', KEYS[1], 'i', ARGV[1], 'e', ARGV[2], 's', 'n', 'd', ARGV[3])
	redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
`)

// parkScript: KEYS s; ARGV inst, epoch, state, ttlMs. Returns 1, or 0 when
// the record is someone else's. A missing record was lost by the store:
// nobody else can own the session, so the park goes ahead.
var parkScript = redis.NewScript(`
local r = redis.call('HMGET', KEYS[1], 'i', 'e', 's')
if r[1] and (r[1] ~= ARGV[1] or r[2] ~= ARGV[2] or r[3] == 'n') then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '0' then
	redis.call('HSET', KEYS[1], 'i', ARGV[1], 'e', ARGV[2], 's', 'p', 'd', ARGV[3])
	redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
`)

// takeScript: KEYS s, live; ARGV inst, url, leaseMs, recordMs. Returns
// {epoch, state}, or 0 when nothing is parked for this instance to take.
var takeScript = redis.NewScript(`
local r = redis.call('HMGET', KEYS[1], 'i', 'e', 's')
local e
if r[3] == 'p' then
	e = string.format('%d', tonumber(r[2]) + 1)
	redis.call('HSET', KEYS[1], 'i', ARGV[1], 'e', e, 's', 't')
	redis.call('PEXPIRE', KEYS[1], ARGV[4])
elseif r[3] == 't' and r[1] == ARGV[1] then
	e = r[2]
else
	return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {e, redis.call('HGET', KEYS[1], 'd')}
`)
