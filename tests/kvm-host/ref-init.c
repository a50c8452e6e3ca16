/*
 * /init of the reference boot: the guest kernel under a reference VMM (QEMU) in
 * the test host. It mounts /proc, prints a marker with the guest uptime, and
 * reboots (the VMM runs with -no-reboot, so that ends the VM). Test-only; moat's
 * real /init is moat-agent. Built with `gcc -static`.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void)
{
	char uptime[64] = "unknown";
	int fd;
	ssize_t n;

	mkdir("/proc", 0555);
	if (mount("proc", "/proc", "proc", 0, NULL) != 0)
		perror("moat-ref-init: mount /proc");
	fd = open("/proc/uptime", O_RDONLY);
	if (fd >= 0) {
		n = read(fd, uptime, sizeof(uptime) - 1);
		if (n > 0) {
			uptime[n] = '\0';
			uptime[strcspn(uptime, " \n")] = '\0';
		}
		close(fd);
	}
	printf("MOAT-REF-INIT uptime=%s\n", uptime);
	fflush(stdout);
	sync();
	reboot(RB_AUTOBOOT);
	perror("moat-ref-init: reboot");
	return 1;
}
