-- wrk script: each request is for /ping/<id>, with <id> drawn at random from a file.
--
-- PING_IDS names a file with one check id (or ping key) per line, so the same script can
-- drive the real server with checks that exist. Without PING_IDS every request uses
-- DEFAULT_ID, which the bare and round-trip apps accept like any other id.
-- PING_METHOD sets the HTTP method (default GET).

local DEFAULT_ID = "00000000-0000-0000-0000-000000000000"

local ids = {}
local method = os.getenv("PING_METHOD") or "GET"

local function load_ids(path)
  local file, err = io.open(path, "r")
  if not file then
    error("cannot open PING_IDS file " .. path .. ": " .. tostring(err))
  end
  for line in file:lines() do
    local id = line:match("^%s*(.-)%s*$")
    if id ~= "" then
      ids[#ids + 1] = id
    end
  end
  file:close()
  if #ids == 0 then
    error("PING_IDS file " .. path .. " contains no ids")
  end
end

-- wrk runs this file once per thread, each in its own Lua state, so every thread loads
-- its own copy of the ids.
local path = os.getenv("PING_IDS")
if path and path ~= "" then
  load_ids(path)
else
  ids[1] = DEFAULT_ID
end

function init(args)
  -- Seed per thread, because otherwise every thread would draw the same sequence of ids.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))
end

function request()
  return wrk.format(method, "/ping/" .. ids[math.random(#ids)])
end
