/* Seccomp probe for the host-mode tests: tries the calls Docker's default profile
 * decides on and prints one `name=errno` line each (0: allowed). Built statically by
 * the test and run inside a container. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int child_result(long pid) {
    if (pid < 0)
        return errno;
    if (pid == 0)
        _exit(0);
    waitpid((pid_t)pid, NULL, 0);
    return 0;
}

int main(void) {
    /* clone with no namespace flag: allowed */
    printf("clone_plain=%d\n", child_result(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)));
    /* clone with CLONE_NEWUSER / CLONE_NEWNS: refused without CAP_SYS_ADMIN */
    printf("clone_newuser=%d\n",
           child_result(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
    printf("clone_newns=%d\n",
           child_result(syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0)));
    /* glibc fork */
    printf("fork=%d\n", child_result(fork()));
    /* clone3: ENOSYS so that libc falls back to clone */
    long r = syscall(435 /* clone3 */, NULL, 0);
    printf("clone3=%d\n", r < 0 ? errno : 0);
    /* AF_VSOCK sockets are refused */
    int s = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    printf("socket_vsock=%d\n", s < 0 ? errno : 0);
    s = socket(AF_UNIX, SOCK_STREAM, 0);
    printf("socket_unix=%d\n", s < 0 ? errno : 0);
    r = unshare(CLONE_NEWNS);
    printf("unshare=%d\n", r < 0 ? errno : 0);
    r = mount("none", "/tmp", "tmpfs", 0, NULL);
    printf("mount=%d\n", r < 0 ? errno : 0);
    return 0;
}
