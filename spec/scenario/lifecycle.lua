-- A script that ends while its tasks still run, run by process_spec.lua in
-- a subprocess of its own: closing the caller's state must neither hang
-- nor crash, however long the tasks would run.  Prints "end of script",
-- then must exit with status 0.
local isolate = require "isolate"

assert(isolate.run(function() return 1 end) == 1)
local tasks = {}
for i = 1, 2 * isolate.cpus() do		-- more than the workers: some wait in the queue
  tasks[i] = isolate.spawn(function() while true do end end)
end
print("end of script")
