Console.WriteLine("ConsoleChat");
