namespace Ddpm.Tool;

public static class Program
{
    public static int Main(string[] args)
    {
        Console.WriteLine("ddpm-tool: train and sample DDPM image models.");
        return 0;
    }
}
