/* COM1 8250/16550 UART driver: 115200 8N1, polled transmit, no interrupts. */
#include "uart.h"
#include "io.h"

#define COM1        0x3f8
#define UART_THR    0   /* transmit holding (DLAB=0) */
#define UART_DLL    0   /* divisor latch low (DLAB=1) */
#define UART_IER    1   /* interrupt enable (DLAB=0) */
#define UART_DLM    1   /* divisor latch high (DLAB=1) */
#define UART_FCR    2   /* FIFO control */
#define UART_LCR    3   /* line control */
#define UART_MCR    4   /* modem control */
#define UART_LSR    5   /* line status */

#define LCR_DLAB    0x80
#define LCR_8N1     0x03
#define LSR_THRE    0x20

void uart_init(void)
{
    outb(COM1 + UART_IER, 0x00);            /* no UART interrupts */
    outb(COM1 + UART_LCR, LCR_DLAB);
    outb(COM1 + UART_DLL, 1);               /* 115200 baud */
    outb(COM1 + UART_DLM, 0);
    outb(COM1 + UART_LCR, LCR_8N1);
    outb(COM1 + UART_FCR, 0xc7);            /* enable + clear FIFOs */
    outb(COM1 + UART_MCR, 0x03);            /* DTR, RTS; OUT2 off: no IRQ */
}

static void uart_tx(char c)
{
    /* Bounded wait: an emulated UART is always ready; a missing one must
     * not hang the guest. */
    for (int i = 0; i < 10000; i++) {
        if (inb(COM1 + UART_LSR) & LSR_THRE)
            break;
        cpu_relax();
    }
    outb(COM1 + UART_THR, (uint8_t)c);
}

void uart_putc(char c)
{
    if (c == '\n')
        uart_tx('\r');
    uart_tx(c);
}
