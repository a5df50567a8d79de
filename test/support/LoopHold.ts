/**
 * How long the event loop is held by synchronous work, measured in CPU time rather than wall
 * time: a timer fires every millisecond and records the process's CPU time used since the last
 * firing. On a loaded machine (the tests share 2 cores with other runs) the wall-clock delay of
 * `monitorEventLoopDelay` also counts the time the OS gave other processes; CPU time between two
 * firings counts only work done meanwhile, so what one request holds the loop for is measured the
 * same on a busy machine as on an idle one. Both are reported.
 */
import { monitorEventLoopDelay } from "node:perf_hooks"

export const watchLoop = () => {
  const histogram = monitorEventLoopDelay({ resolution: 5 })
  histogram.enable()
  let maxHeldCpuUs = 0
  let last = process.cpuUsage()
  let timer: NodeJS.Timeout | undefined
  const tick = () => {
    const used = process.cpuUsage(last)
    last = process.cpuUsage()
    maxHeldCpuUs = Math.max(maxHeldCpuUs, used.user + used.system)
    timer = setTimeout(tick, 1)
  }
  timer = setTimeout(tick, 1)
  return {
    stop: () => {
      clearTimeout(timer)
      histogram.disable()
      return { maxDelayMs: Math.round(histogram.max / 1e6), maxHeldCpuMs: Math.round(maxHeldCpuUs / 1000) }
    }
  }
}
