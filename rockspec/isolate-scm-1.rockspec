rockspec_format = "3.0"
package = "isolate"
version = "scm-1"

source = {
   url = "git+https://github.com/lua-isolate/isolate.git",
   branch = "main",
}

description = {
   summary = "Run a Lua closure in a fresh lua_State on another thread, as Dart's Isolate.run()",
   detailed = [[
isolate brings Dart's Isolate.run() to Lua 5.4. One call, isolate.run(fn, ...),
encodes a closure (its bytecode and, by value, its upvalues) and its arguments,
runs it in a fresh lua_State with the standard libraries on a worker thread of
a process-wide pool, and returns its results: the isolate encodes them once
into a buffer whose ownership passes to the caller, who decodes them once. An
error raised in the isolate comes back as an isolate.RemoteError carrying the
remote traceback. isolate.spawn(fn, ...) returns a task to await later.
Values that cannot travel (coroutines, full userdata, unnamed C functions) are
refused before anything runs, with the path to them. os.exit inside an isolate
ends the isolate, never the process.
]],
   homepage = "https://github.com/lua-isolate/isolate",
   license = "MIT",
   labels = { "concurrency", "threads", "parallel", "isolate" },
}

-- where it is built and tested (the C core keeps to POSIX elsewhere, untested)
supported_platforms = { "linux" }

dependencies = {
   "lua >= 5.4, < 5.5",
}

build = {
   type = "builtin",
   modules = {
      ["isolate"] = "lua/isolate/init.lua",
      ["isolate.luv"] = "lua/isolate/luv.lua",
      ["isolate.cqueues"] = "lua/isolate/cqueues.lua",
      ["isolate.adapters"] = "lua/isolate/adapters.lua",
      ["isolate.core"] = {
         sources = { "src/core.c", "src/codec.c", "src/names.c", "src/message.c",
                     "src/buffer.c", "src/mailbox.c", "src/pool.c", "src/state.c" },
         incdirs = { "src" },
         libraries = { "pthread" },
      },
   },
   -- the reference and the LuaCATS annotations go with the rock
   -- (luarocks show --rock-dir isolate)
   copy_directories = { "docs", "types" },
}

-- `luarocks test` in a checkout: the specs, as `make test` runs them, with
-- the system's busted (Debian's lua-busted): nothing to download.  Spec
-- files after `luarocks test --` run alone (make test SPECS=...).
test = {
   type = "command",
   command = [[sh -c 'exec make test SPECS="$*"' make-test]],
}
