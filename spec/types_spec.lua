-- The type annotations (types/) and the reference (docs/reference.md)
-- against the real module: everything they document exists, and
-- everything public that exists is documented, so an API added without
-- its annotation and its reference entry fails here.

local isolate = require "isolate"

local function readfile(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

-- The documented members of a LuaCATS meta file: class name -> {member
-- name -> "function" or "field"}.  A class is '---@class NAME' followed
-- by 'local VAR = {}'; its functions are 'function VAR.name(' and
-- 'function VAR:name('; its fields '---@field name' under the class.
local function documented(path)
  local classes, byvar, current = {}, {}, nil
  for line in readfile(path):gmatch("[^\n]*") do
    local class = line:match("^%-%-%-@class%s+([%w_.]+)")
    local field = line:match("^%-%-%-@field%s+([%w_]+)")
    local var = line:match("^local%s+([%w_]+)%s*=%s*{}")
    local owner, name = line:match("^function%s+([%w_]+)[.:]([%w_]+)%s*%(")
    if class then
      current = class
      classes[class] = classes[class] or {}
    elseif field and current then
      classes[current][field] = "field"
    elseif var and current then
      byvar[var] = current
      current = nil
    elseif owner then
      assert(byvar[owner], path .. ": function of an unknown table: " .. line)
      classes[byvar[owner]][name] = "function"
    elseif not line:match("^%-%-%-") then
      current = nil           -- a class's fields are the lines right under it
    end
  end
  return classes
end

-- the functions of a table, by name
local function functions(t)
  local names = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "function" then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

-- a real task, pool and completions set, and their methods
local function methods(object)
  local index = getmetatable(object).__index
  assert.equal("table", type(index))
  return index
end

local task = isolate.spawn(function() return 1 end)
task:await()
local pool = isolate.pool{size = 1}
local set = isolate.completions()

local REAL = {
  {class = "isolate.Task", methods = methods(task)},
  {class = "isolate.Pool", methods = methods(pool)},
  {class = "isolate.Completions", methods = methods(set)},
}

-- the adapters, when their event loop's library is installed
local ADAPTERS = {}
for _, name in ipairs{"luv", "cqueues"} do
  local ok, mod = pcall(require, "isolate." .. name)
  if ok then ADAPTERS[#ADAPTERS + 1] = {name = name, module = mod} end
end

teardown(function()
  pool:close()
  set:close()
end)


describe("types/isolate.lua", function()
  local classes = documented("types/isolate.lua")

  it("is valid Lua, starts with ---@meta isolate, and returns the module's class", function()
    assert.is_function(loadfile("types/isolate.lua"))
    local text = readfile("types/isolate.lua")
    assert.matches("^%-%-%-@meta isolate\n", text)
    assert.matches("\nreturn isolate\n$", text)
  end)

  it("documents the classes of the API", function()
    for _, class in ipairs{"isolate", "isolate.Task", "isolate.Pool", "isolate.Completions",
                           "isolate.RemoteError", "isolate.TimeoutError", "isolate.PoolOptions",
                           "isolate.MapOptions", "isolate.DecodeOptions", "isolate.Stats"} do
      assert.is_table(classes[class], "no ---@class " .. class)
    end
  end)

  it("documents only functions the module has", function()
    for name, kind in pairs(classes["isolate"]) do
      if kind == "function" then
        assert.equal("function", type(isolate[name]), "isolate." .. name .. " is documented but not a function")
      else
        assert.is_not_nil(isolate[name], "isolate." .. name .. " is documented but nil")
      end
    end
  end)

  it("documents every field of the module", function()
    for k, v in pairs(isolate) do
      local kind = classes["isolate"][k]
      assert.is_not_nil(kind, "isolate." .. tostring(k) .. " has no annotation in types/isolate.lua")
      assert.equal(type(v) == "function" and "function" or "field", kind,
        "isolate." .. k .. " is annotated as a " .. tostring(kind))
    end
  end)

  for _, real in ipairs(REAL) do
    it("documents exactly the methods of a real " .. real.class, function()
      local doc = classes[real.class]
      for name, kind in pairs(doc) do
        if kind == "function" then
          assert.equal("function", type(real.methods[name]),
            real.class .. ":" .. name .. " is documented but does not exist")
        end
      end
      for _, name in ipairs(functions(real.methods)) do
        assert.equal("function", doc[name], real.class .. ":" .. name .. " has no annotation")
      end
    end)
  end

  it("documents the fields of the error tables", function()
    local ok, err = pcall(isolate.map, function(x) error("no " .. x) end, {7})
    assert.is_false(ok)
    assert.equal(isolate.RemoteError, getmetatable(err))
    for k in pairs(err) do
      assert.equal("field", classes["isolate.RemoteError"][k], "RemoteError field " .. k .. " has no annotation")
    end
    for _, k in ipairs{"kind", "message", "traceback", "value", "index"} do
      assert.equal("field", classes["isolate.RemoteError"][k], "RemoteError field " .. k)
    end
    local slow = isolate.spawn(function() local t0 = os.clock() repeat until os.clock() - t0 > 0.2 end)
    local ok2, timeout = pcall(slow.await, slow, 0)
    assert.is_false(ok2)
    assert.equal(isolate.TimeoutError, getmetatable(timeout))
    for k in pairs(timeout) do
      assert.equal("field", classes["isolate.TimeoutError"][k], "TimeoutError field " .. k .. " has no annotation")
    end
    slow:cancel()
  end)

  it("documents the fields of stats()", function()
    for k in pairs(isolate.stats()) do
      assert.equal("field", classes["isolate.Stats"][k], "stats field " .. k .. " has no annotation")
    end
  end)

  for _, adapter in ipairs(ADAPTERS) do
    it("documents exactly the functions of isolate." .. adapter.name .. " (types/isolate/" .. adapter.name .. ".lua)", function()
      local path = "types/isolate/" .. adapter.name .. ".lua"
      assert.is_function(loadfile(path))
      assert.matches("^%-%-%-@meta isolate%." .. adapter.name .. "\n", readfile(path))
      local doc = documented(path)["isolate." .. adapter.name]
      assert.is_table(doc)
      for name in pairs(doc) do
        assert.equal("function", type(adapter.module[name]), "isolate." .. adapter.name .. "." .. name)
      end
      for _, name in ipairs(functions(adapter.module)) do
        assert.equal("function", doc[name], "isolate." .. adapter.name .. "." .. name .. " has no annotation")
      end
    end)
  end
end)


describe("docs/reference.md", function()
  local text = readfile("docs/reference.md")

  -- the text of its headings, one per line
  local headings = {}
  for line in text:gmatch("[^\n]+") do
    local h = line:match("^#+%s+(.*)$")
    if h then headings[#headings + 1] = h end
  end
  headings = "\n" .. table.concat(headings, "\n") .. "\n"

  -- is there a heading that shows the call 'prefix .. name .. "("'?
  local function has_heading(prefix, name)
    return headings:find("`" .. prefix .. name .. "(", 1, true) ~= nil
  end

  it("has a heading for every function of the module", function()
    for _, name in ipairs(functions(isolate)) do
      assert.is_true(has_heading("isolate.", name), "no heading `isolate." .. name .. "(...)`")
    end
  end)

  it("mentions every field of the module", function()
    for k in pairs(isolate) do
      assert.is_truthy(text:find("`isolate." .. k, 1, true), "isolate." .. k .. " is not mentioned")
    end
  end)

  for _, real in ipairs(REAL) do
    local prefix = ({["isolate.Task"] = "task:", ["isolate.Pool"] = "pool:",
                     ["isolate.Completions"] = "c:"})[real.class]
    it("has a heading for every method of a real " .. real.class .. " (`" .. prefix .. "name(`)", function()
      for _, name in ipairs(functions(real.methods)) do
        assert.is_true(has_heading(prefix, name), "no heading `" .. prefix .. name .. "(...)`")
      end
    end)
  end

  it("documents no function or method that does not exist", function()
    local real = {["isolate."] = isolate, ["task:"] = REAL[1].methods,
                  ["pool:"] = REAL[2].methods, ["c:"] = REAL[3].methods}
    for prefix, name in headings:gmatch("`([%a]+[.:])([%w_]+)%(") do
      if real[prefix] then
        assert.equal("function", type(real[prefix][name]), "a heading documents " .. prefix .. name)
      end
    end
  end)

  for _, adapter in ipairs(ADAPTERS) do
    it("has a heading for every function of isolate." .. adapter.name, function()
      for _, name in ipairs(functions(adapter.module)) do
        assert.is_true(has_heading("isolate." .. adapter.name .. ".", name),
          "no heading `isolate." .. adapter.name .. "." .. name .. "(...)`")
      end
    end)
  end

  it("names every RemoteError kind the core can raise", function()
    for _, kind in ipairs{"error", "exit", "memory", "cancelled"} do
      assert.is_truthy(text:find('| `"' .. kind .. '"` |', 1, true), "kind " .. kind)
    end
  end)
end)
