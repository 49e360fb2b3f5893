/*
** For the cancel specs, through LD_PRELOAD: every real-time signal is
** ignored before the program starts, as in a process whose runtime took
** them all; isolate then finds none free for its cancel, and must poll.
*/
#include <signal.h>

__attribute__((constructor)) static void take_all (void) {
  int sig;
  for (sig = SIGRTMIN; sig <= SIGRTMAX; sig++) signal(sig, SIG_IGN);
}
