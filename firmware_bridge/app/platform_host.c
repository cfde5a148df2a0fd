/* platform.h on a POSIX host: stdout for text; the serial channel is stdin/stdout until
 * hs_platform_serial_open() replaces it with a new pseudo-terminal, the host twin of
 * QEMU's `-serial pty` (the host client opens its slave side like a USB serial port). */
#define _XOPEN_SOURCE 600 /* posix_openpt, grantpt, unlockpt, ptsname */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <termios.h>
#include <unistd.h>

#include "platform.h"

const char hs_platform_name[] = "host";

static int s_read_fd = STDIN_FILENO;
static int s_write_fd = STDOUT_FILENO;
static int s_slave_fd = -1; /* kept open: a pty master reads EIO while no slave is open */

void hs_platform_init(void) {}

int hs_platform_has_ticks(void) { return 0; }

uint64_t hs_platform_ticks(void) { return 0; }

int hs_platform_serial_open(void) {
  struct termios raw;
  const char *path;
  const int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) return -1;
  path = ptsname(master);
  if (path == NULL) return -1;
  s_slave_fd = open(path, O_RDWR | O_NOCTTY);
  if (s_slave_fd < 0 || tcgetattr(s_slave_fd, &raw) != 0) return -1;
  /* raw, as cfmakeraw (not in POSIX): 8 bits, no echo, no CR/LF or XON/XOFF handling */
  raw.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
  raw.c_oflag &= ~(tcflag_t)OPOST;
  raw.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
  raw.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
  raw.c_cflag |= CS8;
  if (tcsetattr(s_slave_fd, TCSANOW, &raw) != 0) return -1;
  s_read_fd = s_write_fd = master;
  printf("HS_SERIAL_PORT %s\n", path);
  fflush(stdout);
  return 0;
}

void hs_serial_write(const uint8_t *data, size_t len) {
  fflush(stdout); /* keep printf text and serial bytes in order when both are stdout */
  while (len > 0) {
    ssize_t n = write(s_write_fd, data, len);
    if (n <= 0) return;
    data += n;
    len -= (size_t)n;
  }
}

int hs_serial_read_byte(uint32_t timeout_polls) {
  (void)timeout_polls;
  uint8_t byte;
  return read(s_read_fd, &byte, 1) == 1 ? byte : -1;
}

size_t hs_platform_stack_used(void) { return 0; }

size_t hs_platform_heap_used(void) { return 0; }
